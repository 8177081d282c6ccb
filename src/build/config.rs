//! What the instructions that only change the image config do to it: one
//! pure function, no I/O, unit-tested instruction by instruction.

use std::collections::{BTreeMap, BTreeSet};

use dockerfile_parse::command::Command;
use oci_image::{ContainerConfig, ImageConfiguration};

use super::{BuildError, instr};

/// The shell of shell-form commands: `SHELL`, else `/bin/sh -c`.
pub(super) fn shell(config: &ImageConfiguration) -> Vec<String> {
    config.config.as_ref().and_then(|c| c.shell.clone()).unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
}

/// Applies `cmd` (expanded) to `config`. `cmd_set` tells whether this
/// stage has set `CMD` (an `ENTRYPOINT` then keeps it; otherwise it resets
/// the `CMD` inherited from the base) and is updated by `CMD`.
///
/// # Errors
/// A bad `EXPOSE` port, or a command that does more than change the config.
pub(super) fn apply(config: &mut ImageConfiguration, cmd: Command, cmd_set: &mut bool) -> Result<(), BuildError> {
    let shell = shell(config);
    if let Command::Maintainer(m) = cmd {
        config.author = Some(m);
        return Ok(());
    }
    let cfg = config.config.get_or_insert_with(ContainerConfig::default);
    match cmd {
        Command::Env(pairs) => {
            let env = cfg.env.get_or_insert_with(Vec::new);
            for (k, v) in pairs {
                instr::set_env(env, &k, &v);
            }
        }
        Command::Label(pairs) => {
            let labels = cfg.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in pairs {
                labels.insert(k, v);
            }
        }
        Command::Expose(ports) => {
            let set = cfg.exposed_ports.get_or_insert_with(BTreeSet::new);
            // a variable may hold several ports (BuildKit splits words here)
            for p in ports.iter().flat_map(|p| p.split_whitespace()) {
                for one in instr::expand_ports(p)? {
                    set.insert(one);
                }
            }
        }
        Command::Volume(vols) => {
            let set = cfg.volumes.get_or_insert_with(BTreeSet::new);
            for v in vols.into_iter().filter(|v| !v.is_empty()) {
                set.insert(v);
            }
        }
        Command::User(u) => cfg.user = Some(u),
        Command::Stopsignal(s) => cfg.stop_signal = Some(s),
        Command::Healthcheck(h) => cfg.healthcheck = Some(instr::healthcheck(&h)),
        Command::Shell(sh) => cfg.shell = Some(sh),
        Command::Cmd(cl) => {
            cfg.cmd = Some(instr::command_args(&cl, &shell));
            *cmd_set = true;
        }
        Command::Entrypoint(cl) => {
            cfg.entrypoint = Some(instr::command_args(&cl, &shell));
            if !*cmd_set {
                cfg.cmd = None;
            }
        }
        Command::Onbuild { expression, .. } => cfg.on_build.get_or_insert_with(Vec::new).push(expression),
        other => {
            return Err(BuildError::Unsupported { what: format!("instruction {other:?} inside a stage") });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// `lines` applied in turn to a fresh config (`cmd_set` as a stage starts).
    fn after(lines: &[&str]) -> ImageConfiguration {
        let mut config = oci_image::ConfigBuilder::new(&"linux/amd64".parse().unwrap()).build();
        let mut cmd_set = false;
        for line in lines {
            let df = dockerfile_parse::parse(line).unwrap();
            let cmd = df.instructions[0].command().unwrap();
            let env: BTreeMap<String, String> = BTreeMap::from([("P".into(), "8080 9090/udp".into())]);
            let (cmd, _) = cmd.expand(&dockerfile_parse::shell::Lexer::default(), &env).unwrap();
            apply(&mut config, cmd, &mut cmd_set).unwrap();
        }
        config
    }

    fn cc(c: &ImageConfiguration) -> &ContainerConfig {
        c.config.as_ref().unwrap()
    }

    #[test]
    fn env_replaces_in_place_and_label_adds() {
        let c = after(&["ENV A=1 B=2", "ENV A=3", "LABEL x=y \"a b\"=c"]);
        assert_eq!(cc(&c).env.as_deref().unwrap(), ["A=3", "B=2"]);
        let labels = cc(&c).labels.as_ref().unwrap();
        assert_eq!(labels.get("x").map(String::as_str), Some("y"));
        assert_eq!(labels.get("a b").map(String::as_str), Some("c"));
    }

    #[test]
    fn expose_splits_words_and_ranges_and_volume_skips_empty() {
        let c = after(&["EXPOSE $P 53/UDP 7000-7001", "VOLUME /data \"\""]);
        let ports: Vec<&str> = cc(&c).exposed_ports.as_ref().unwrap().iter().map(String::as_str).collect();
        assert_eq!(ports, ["53/udp", "7000/tcp", "7001/tcp", "8080/tcp", "9090/udp"]);
        assert_eq!(cc(&c).volumes.as_ref().unwrap().iter().collect::<Vec<_>>(), ["/data"]);
    }

    #[test]
    fn cmd_and_entrypoint_use_the_shell_and_entrypoint_resets_an_inherited_cmd() {
        let c = after(&["SHELL [\"/bin/bash\", \"-ec\"]", "CMD echo hi"]);
        assert_eq!(cc(&c).cmd.as_deref().unwrap(), ["/bin/bash", "-ec", "echo hi"]);
        // CMD set in this stage survives ENTRYPOINT
        let c = after(&["CMD [\"a\"]", "ENTRYPOINT [\"e\"]"]);
        assert_eq!(cc(&c).cmd.as_deref().unwrap(), ["a"]);
        // a CMD from before this stage does not
        let mut config = after(&["CMD [\"a\"]"]);
        let df = dockerfile_parse::parse("ENTRYPOINT [\"e\"]").unwrap();
        apply(&mut config, df.instructions[0].command().unwrap(), &mut false).unwrap();
        assert_eq!(cc(&config).cmd, None);
        assert_eq!(cc(&config).entrypoint.as_deref().unwrap(), ["e"]);
    }

    #[test]
    fn user_stopsignal_healthcheck_onbuild_maintainer() {
        let c = after(&[
            "USER app:staff",
            "STOPSIGNAL SIGINT",
            "HEALTHCHECK --retries=2 CMD [\"/bin/true\"]",
            "ONBUILD RUN echo x",
            "MAINTAINER someone",
        ]);
        assert_eq!(cc(&c).user.as_deref(), Some("app:staff"));
        assert_eq!(cc(&c).stop_signal.as_deref(), Some("SIGINT"));
        let h = cc(&c).healthcheck.as_ref().unwrap();
        assert_eq!(h.test.as_deref().unwrap(), ["CMD", "/bin/true"]);
        assert_eq!(h.retries, Some(2));
        assert_eq!(cc(&c).on_build.as_deref().unwrap(), ["RUN echo x"]);
        assert_eq!(c.author.as_deref(), Some("someone"));
    }

    #[test]
    fn commands_that_do_more_than_config_are_refused() {
        let mut config = after(&[]);
        let df = dockerfile_parse::parse("RUN true").unwrap();
        let err = apply(&mut config, df.instructions[0].command().unwrap(), &mut false).unwrap_err();
        assert!(matches!(err, BuildError::Unsupported { .. }), "{err}");
    }
}
