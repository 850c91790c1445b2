//! The worker's HTTP surface: health and metrics (`health`), and the admin API that cyzen's admin
//! screens and operators call (`api`, over the operations in `service`, `bulk`, `consent`,
//! `cleanup`; bearer tokens in `auth`; long operations as `jobs`; texts in `messages`; one error
//! shape in `errors`), served by the hardened `listener`.

pub mod api;
pub mod auth;
pub mod bulk;
mod cleanup;
pub mod command;
pub mod consent;
pub mod errors;
pub mod health;
pub mod jobs;
pub mod listener;
pub mod messages;
pub mod service;

pub use health::{Health, router};
pub use service::{Admin, AdminError};
