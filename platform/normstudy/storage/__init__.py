"""Where a study's files live: one small layer over ``pyarrow.fs`` (local, NFS, s3://, gs://).

The rest of the code never joins paths by hand or assumes a local disk: it asks a `Location`.
A study folder's `StudyLease` lets one driver at a time work in it.
"""

from normstudy.storage._lease import (
    LEASE_FILE,
    LeaseHeldError,
    LeaseHolder,
    StudyLease,
    live_holder,
    read_lease,
)
from normstudy.storage._location import Location, StorageError, as_location

__all__ = [
    "LEASE_FILE",
    "LeaseHeldError",
    "LeaseHolder",
    "Location",
    "StorageError",
    "StudyLease",
    "as_location",
    "live_holder",
    "read_lease",
]
