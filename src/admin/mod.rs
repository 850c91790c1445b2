//! The worker's HTTP surface: health and metrics (`health`), and the admin API that cyzen's admin
//! screens and operators call.

pub mod health;

pub use health::{Health, router};
