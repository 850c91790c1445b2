//! The one integration-test binary: modules talk to the real RabbitMQ and Redis (and the
//! in-process Graph emulator). Each test uses its own queue names and key prefix.

mod admin;
mod architecture;
mod bad_input;
mod case_ids;
mod config;
mod contract;
mod convergence;
mod deadletter;
mod demo;
mod deploy;
mod directory;
mod directory_import;
mod emulator;
mod faults;
mod fleet;
mod graph_client;
mod ledger;
mod pipeline;
mod proxy;
mod publish;
mod redis_servers;
mod repair;
mod security;
mod shutdown;
mod supervision;
mod support;
mod throttling;
mod topology;
mod window;
