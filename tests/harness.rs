//! The test harness's own tests: the RESP reader the tests read replies with
//! (`support::resp`) and the Redis fixture (`support::RedisServer`). They live beside that code
//! in tests/support/ and are run by this binary alone, not by every binary that includes the
//! support module.

mod support;

#[path = "support/redis_tests.rs"]
mod redis_tests;
#[path = "support/resp_tests.rs"]
mod resp_tests;
