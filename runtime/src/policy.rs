//! Which imports a plugin may have.
//!
//! A plugin must be a pure function of its inputs. Imports that could make it observe
//! anything else from outside — time, randomness, files, the network — are refused at
//! load time, by name.
//!
//! Rust's standard library for `wasm32-wasip2` links the `wasi:cli` and `wasi:io`
//! interfaces (environment, stdio streams, terminal, exit) into every component for its
//! print, panic and `std::env` machinery, whether the plugin uses them or not. Those are
//! satisfied with fixed stubs that trap when called: a plugin that really reads its
//! environment or writes to stdout fails that call with a clear error, so no outside
//! information can ever reach a plugin through them.

/// What the runtime does with one import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportDecision {
    /// The Lockstep host interface.
    Host,
    /// Linked to a stub that traps when called.
    TrappingStub,
    /// Refused at load time; the reason names the hazard.
    Refused(&'static str),
}

/// Decides what to do with the import called `name` (e.g. `wasi:clocks/wall-clock@0.2.6`).
pub fn classify(name: &str) -> ImportDecision {
    let interface = name.split('@').next().unwrap_or(name);
    if interface == "lockstep:plugin/host" || interface == "lockstep:plugin/types" {
        return ImportDecision::Host;
    }
    let refused = |why| ImportDecision::Refused(why);
    match interface.split('/').next().unwrap_or("") {
        "wasi:clocks" => refused("a clock makes results depend on when they are computed"),
        "wasi:random" => refused("randomness makes results differ between runs"),
        "wasi:filesystem" => refused("plugins get no filesystem"),
        "wasi:sockets" | "wasi:http" => refused("plugins get no network"),
        "wasi:io" => ImportDecision::TrappingStub,
        "wasi:cli" => ImportDecision::TrappingStub,
        _ => refused("not part of the Lockstep plugin world"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nondeterministic_and_ambient_interfaces_by_name() {
        for name in [
            "wasi:clocks/wall-clock@0.2.6",
            "wasi:clocks/monotonic-clock@0.2.0",
            "wasi:random/random@0.2.6",
            "wasi:random/insecure-seed@0.2.6",
            "wasi:filesystem/preopens@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "acme:evil/backdoor",
        ] {
            assert!(
                matches!(classify(name), ImportDecision::Refused(_)),
                "{name}"
            );
        }
    }

    #[test]
    fn stubs_output_only_interfaces_and_links_the_host() {
        assert_eq!(
            classify("wasi:cli/stderr@0.2.6"),
            ImportDecision::TrappingStub
        );
        assert_eq!(
            classify("wasi:io/streams@0.2.6"),
            ImportDecision::TrappingStub
        );
        assert_eq!(
            classify("wasi:cli/exit@0.2.6"),
            ImportDecision::TrappingStub
        );
        assert_eq!(
            classify("wasi:cli/environment@0.2.6"),
            ImportDecision::TrappingStub
        );
        assert_eq!(classify("lockstep:plugin/host@0.1.0"), ImportDecision::Host);
        assert_eq!(
            classify("lockstep:plugin/types@0.1.0"),
            ImportDecision::Host
        );
        assert!(matches!(
            classify("lockstep:plugin/other@0.1.0"),
            ImportDecision::Refused(_)
        ));
    }
}
