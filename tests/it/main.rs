//! The one integration-test binary: modules talk to the real RabbitMQ and Redis (and the
//! in-process Graph emulator). Each test uses its own queue names and key prefix.

mod config;
mod contract;
mod emulator;
mod graph_client;
mod pipeline;
mod publish;
mod support;
