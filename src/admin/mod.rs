//! The worker's HTTP surface: health and metrics (`health`), and the admin API that cyzen's admin
//! screens and operators call (`api`, over the operations of [`Admin`]: `companies`,
//! `credentials`, `consent`, `users`, `removal` (with `cleanup`), `bulk`; what they share in
//! `service`; input shapes in `input`; bearer tokens in `auth`; long operations as `jobs`; texts
//! in `messages`; one error shape in `errors`), served by the hardened `listener`.

pub mod api;
mod audit;
pub mod auth;
pub mod bulk;
mod cleanup;
pub mod command;
pub mod companies;
pub mod consent;
pub mod credentials;
pub mod errors;
pub mod health;
pub mod input;
pub mod jobs;
pub mod listener;
pub mod messages;
pub mod removal;
pub mod service;
pub mod users;

pub use health::{Health, router};
pub use service::{Admin, AdminError};
