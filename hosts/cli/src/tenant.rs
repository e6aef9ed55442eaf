//! `lockstep tenant token`: a new bearer token for a tenant of `serve`.

use anyhow::Result;

/// `lockstep tenant …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Make a token for tenant NAME: the token is printed once (give it to the
    /// tenant), with the tenants-file entry that holds only its SHA-256.
    Token {
        /// The tenant's name.
        #[arg(long)]
        name: String,
        /// The groups it may read: NAME (every version) or NAME@VERSION. Repeatable.
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
    },
}

/// Runs a `tenant` subcommand.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Token { name, groups } => {
            let token = lockstep_serving::access::new_token()
                .map_err(|e| anyhow::anyhow!("no random bytes for a token: {e}"))?;
            let groups: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
            println!("token: {token}");
            println!();
            println!("# add to the tenants file (serve --tenants FILE):");
            println!("[[tenant]]");
            println!("name = {name:?}");
            println!(
                "token_sha256 = \"{}\"",
                lockstep_serving::access::token_sha256(&token)
            );
            println!("groups = [{}]", groups.join(", "));
            Ok(())
        }
    }
}
