//! Pure policy: groups, quantities, node-pool routing, caps and name rules. No I/O.
