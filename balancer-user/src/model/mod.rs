//! The library's vocabulary: service addresses and protocols, backend states and weights,
//! syncookie secrets. Plain values with their parsing and formatting; nothing here
//! touches the data plane.

pub mod addr;
pub mod backend;
pub mod persistence;
pub mod secret;

pub use addr::{Proto, ServiceAddr};
pub use backend::{BackendState, Weight};
pub use persistence::Persistence;
