//! Newtypes for the two numbers that a log must never confuse: a record's
//! offset in the partition and a byte position inside a segment file.

use std::fmt;

/// The position of a record in its partition: dense, starting at 0, strictly
/// increasing in the order records were appended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl Offset {
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }

    pub fn plus(self, delta: u64) -> Offset {
        Offset(self.0 + delta)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A byte position inside one segment's `.log` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilePosition(pub u64);

impl fmt::Display for FilePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
