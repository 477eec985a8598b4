//! Each wire format against a byte-exact fake upstream on loopback.
