//! ACL policies: parsing Vault's policy HCL and deciding what a token may do. (Filled in by the
//! secrets-API work.)
