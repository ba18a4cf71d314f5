from normstudy.cli import main

main()
