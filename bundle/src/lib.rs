//! The sideload bundle engine.

pub mod image;
