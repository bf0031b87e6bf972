//! Drives a vaultd server with vaultrs and exits non-zero on the first call that fails.
//! Usage: `vaultrs-check http://127.0.0.1:8200 ROOT_TOKEN` (the server needs KV v2 at `secret/`).
//! Run by cluster-tests/tests/cli.rs.

use std::collections::HashMap;
use std::fmt::Debug;

use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::{kv2, sys, token, transit};

fn check<T: Debug, E: Debug>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => {
            println!("ok   {what}: {v:?}");
            v
        }
        Err(e) => {
            println!("FAIL {what}: {e:?}");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(token)) = (args.next(), args.next()) else {
        eprintln!("usage: vaultrs-check ADDR TOKEN");
        std::process::exit(2);
    };
    let settings = check("settings", VaultClientSettingsBuilder::default().address(addr).token(token).build());
    let client = match VaultClient::new(settings) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL client: {e:?}");
            std::process::exit(1);
        }
    };

    let h = check("sys::health", sys::health(&client).await);
    assert!(h.initialized && !h.sealed, "health: {h:?}");
    check("sys::status", sys::status(&client).await.map(|_| ()));
    let data: HashMap<&str, &str> = HashMap::from([("user", "alice")]);
    check("kv2::set", kv2::set(&client, "secret", "vaultrs/app", &data).await.map(|m| m.version));
    let read: HashMap<String, String> = check("kv2::read", kv2::read(&client, "secret", "vaultrs/app").await);
    assert_eq!(read.get("user").map(String::as_str), Some("alice"));
    check("kv2::read_metadata", kv2::read_metadata(&client, "secret", "vaultrs/app").await.map(|m| m.current_version));
    check("token::lookup_self", token::lookup_self(&client).await.map(|t| t.policies));
    check("token::new", token::new(&client, None).await.map(|a| a.policies));
    check("sys::mount::list", sys::mount::list(&client).await.map(|m| m.len()));
    check("sys::mount::enable transit", sys::mount::enable(&client, "transit", "transit", None).await);
    check("transit::key::create", transit::key::create(&client, "transit", "k1", None).await);
    let ct = check("transit::data::encrypt", transit::data::encrypt(&client, "transit", "k1", "aGVsbG8=", None).await);
    let pt = check("transit::data::decrypt", transit::data::decrypt(&client, "transit", "k1", &ct.ciphertext, None).await);
    assert_eq!(pt.plaintext, "aGVsbG8=");
    check("sys::policy::set", sys::policy::set(&client, "vaultrs", "path \"secret/*\" {\n  capabilities = [\"read\"]\n}").await);
    check("sys::policy::read", sys::policy::read(&client, "vaultrs").await.map(|p| p.name));
    println!("vaultrs-ok");
}
