//! The `approle` auth method. (Filled in by the secrets-API work.)

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::request::{Request, Response};
use crate::router::LogicalBackend;
use crate::view::View;

pub struct AppRole {
    #[allow(dead_code)]
    view: View,
}

impl AppRole {
    pub fn new(view: View) -> Self {
        AppRole { view }
    }
}

#[async_trait]
impl LogicalBackend for AppRole {
    async fn handle(&self, _req: &Request, _path: &str) -> Result<Option<Response>> {
        Err(Error::UnsupportedPath)
    }
}
