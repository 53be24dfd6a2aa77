//! Test harness: real Redis ([`redis`]), the service and an HTTP client ([`http`]), and
//! stream clients ([`ws`]).

pub mod http;
pub mod openapi;
pub mod redis;
pub mod topology;
pub mod ws;

pub use http::{test_config, Resp, TestApp};
pub use redis::{free_port, redis_client, shared_redis_url, RedisServer};
