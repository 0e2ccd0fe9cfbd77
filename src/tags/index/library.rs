//! The `cachet` function library (`index.lua`) and loading it into Redis.

use fred::clients::Client;
use fred::interfaces::FunctionInterface;
use fred::types::Value;

use super::{IndexError, TagIndex};

/// The library, loaded with `FUNCTION LOAD REPLACE`.
pub const LIBRARY: &str = include_str!("../index.lua");

impl TagIndex {
    /// Loads (or replaces) the `cachet` function library.
    pub async fn install(&self, client: &Client) -> Result<(), IndexError> {
        let _: Value = client.function_load(true, LIBRARY).await?;
        Ok(())
    }
}
