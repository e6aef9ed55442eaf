//! `lockstep cache-acl`: the Redis ACL rule that makes a user a tenant of the cache.

use anyhow::{Context, Result, bail};

/// What `cache-acl` takes.
#[derive(clap::Args)]
pub struct AclArgs {
    /// The Redis user.
    #[arg(long, required_unless_present = "tenants", conflicts_with = "tenants")]
    pub user: Option<String>,
    /// The environment variable holding its password.
    #[arg(long, default_value = "LOCKSTEP_TENANT_PASSWORD")]
    pub password_env: String,
    /// A group version it may read, NAME@VERSION. Repeatable.
    #[arg(
        long = "group",
        required_unless_present = "tenants",
        conflicts_with = "tenants"
    )]
    pub groups: Vec<String>,
    /// Take the user and groups from this tenants file (the one `serve --tenants`
    /// reads): one definition of a tenant for its token and its Redis user.
    #[arg(long, requires = "tenant")]
    pub tenants: Option<std::path::PathBuf>,
    /// The tenant in `--tenants` (it must name a `redis_user`).
    #[arg(long, requires = "tenants")]
    pub tenant: Option<String>,
    /// Allow writes too (for the stream host's user).
    #[arg(long)]
    pub write: bool,
}

/// Prints the `ACL SETUSER` command for `args`.
pub fn acl(args: &AclArgs) -> Result<()> {
    let password = std::env::var(&args.password_env)
        .ok()
        .filter(|p| !p.is_empty())
        .with_context(|| format!("set {} to the tenant's password", args.password_env))?;
    let (user, patterns): (String, Vec<String>) = match (&args.tenants, &args.tenant) {
        (Some(path), Some(name)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the tenants file {}", path.display()))?;
            let access =
                lockstep_serving::access::Access::parse(&text, &path.display().to_string())?;
            let Some(tenant) = access.tenants().iter().find(|t| &t.name == name) else {
                bail!("{} has no tenant `{name}`", path.display());
            };
            let Some(user) = &tenant.redis_user else {
                bail!(
                    "tenant `{name}` in {} names no redis_user: add one to give it a Redis user",
                    path.display()
                );
            };
            // NAME: every version of the group; NAME@VERSION: that one.
            let patterns = tenant
                .groups
                .iter()
                .map(|g| match g.split_once('@') {
                    Some(_) => lockstep_cache::group_key_pattern(g),
                    None => lockstep_cache::group_name_key_pattern(g),
                })
                .collect();
            (user.clone(), patterns)
        }
        _ => {
            for group in &args.groups {
                let ok = group.split_once('@').is_some_and(|(name, version)| {
                    !name.is_empty() && !version.is_empty() && !group.contains(char::is_whitespace)
                });
                anyhow::ensure!(ok, "`{group}` is not a group version NAME@VERSION");
            }
            let patterns = args
                .groups
                .iter()
                .map(|g| lockstep_cache::group_key_pattern(g))
                .collect();
            (args.user.clone().unwrap_or_default(), patterns)
        }
    };
    let rules = lockstep_cache::tenant_acl_for_patterns(&user, &password, &patterns, args.write);
    // Quoted for redis-cli, so a password with spaces or quotes stays one argument.
    let quoted: Vec<String> = rules
        .iter()
        .map(|r| format!("\"{}\"", r.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    println!("ACL SETUSER {}", quoted.join(" "));
    Ok(())
}
