//! `lockstep cache-acl`: the Redis ACL rule that makes a user a tenant of the cache.

use anyhow::{Context, Result};

/// What `cache-acl` takes.
#[derive(clap::Args)]
pub struct AclArgs {
    /// The Redis user.
    #[arg(long)]
    pub user: String,
    /// The environment variable holding its password.
    #[arg(long, default_value = "LOCKSTEP_TENANT_PASSWORD")]
    pub password_env: String,
    /// A group version it may read, NAME@VERSION. Repeatable.
    #[arg(long = "group", required = true)]
    pub groups: Vec<String>,
    /// Allow writes too (for the stream host's user).
    #[arg(long)]
    pub write: bool,
}

/// Prints the `ACL SETUSER` command for `args`.
pub fn acl(args: &AclArgs) -> Result<()> {
    let AclArgs {
        user,
        password_env,
        groups,
        write,
    } = args;
    let password = std::env::var(password_env)
        .ok()
        .filter(|p| !p.is_empty())
        .with_context(|| format!("set {password_env} to the tenant's password"))?;
    for group in groups {
        let ok = group.split_once('@').is_some_and(|(name, version)| {
            !name.is_empty() && !version.is_empty() && !group.contains(char::is_whitespace)
        });
        anyhow::ensure!(ok, "`{group}` is not a group version NAME@VERSION");
    }
    let rules = lockstep_cache::tenant_acl(user, &password, groups, *write);
    // Quoted for redis-cli, so a password with spaces or quotes stays one argument.
    let quoted: Vec<String> = rules
        .iter()
        .map(|r| format!("\"{}\"", r.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    println!("ACL SETUSER {}", quoted.join(" "));
    Ok(())
}
