//! Unit tests of the store through its API.
