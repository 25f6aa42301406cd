//! Layers and stacks: the union rules (pure: [`whiteout`], [`resolve`], [`merge`]) and the
//! I/O that feeds them from real layer directories ([`stack`]).

pub mod blame;
pub mod kind;
pub mod merge;
pub mod resolve;
pub mod stack;
pub mod whiteout;

pub use kind::FileKind;
pub use stack::{Layer, LayerStack, Probed};
