//! The I/O steps: dereference, apply, status, finalizer; and the Controller wiring.
