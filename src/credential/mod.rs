//! Auth methods mounted under `auth/`: they check credentials and return an [`Auth`]
//! (`crate::request::Auth`) from which the core mints a token.

pub mod approle;
pub mod userpass;
