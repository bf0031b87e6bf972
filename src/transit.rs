//! The transit secrets engine: encryption as a service. (Filled in by the secrets-API work.)

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::request::{Request, Response};
use crate::router::LogicalBackend;
use crate::view::View;

pub struct Transit {
    #[allow(dead_code)]
    view: View,
}

impl Transit {
    pub fn new(view: View) -> Self {
        Transit { view }
    }
}

#[async_trait]
impl LogicalBackend for Transit {
    async fn handle(&self, _req: &Request, _path: &str) -> Result<Option<Response>> {
        Err(Error::UnsupportedPath)
    }
}
