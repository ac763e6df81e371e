//! Every service of the registry has its own binary, and each starts as
//! every polyhub binary does; e2e runs them against the real stores.

use std::path::PathBuf;
use std::process::Command;

use hub_testkit::Service;

/// A binary of this package, beside `hub` in the build's folder.
fn binary(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hub")).with_file_name(name)
}

/// `--help` names its one option, and a configuration it does not
/// understand stops it with an error naming the key.
#[test]
fn each_service_binary_answers_help_and_refuses_unknown_settings() {
    for service in Service::ALL {
        let bin = binary(service.name());
        assert!(bin.exists(), "{service} has no binary at {}", bin.display());
        let help = Command::new(&bin).arg("--help").output().unwrap();
        assert!(help.status.success(), "{service} --help");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("--config <CONFIG>"),
            "{service} --help: {help}"
        );
        assert!(help.contains("POLYHUB_CONFIG"), "{service} --help: {help}");

        let refused = Command::new(&bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("POLYHUB_SERVICES__NO_SUCH_SETTING", "1")
            .output()
            .unwrap();
        assert!(
            !refused.status.success(),
            "{service} started with an unknown key"
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("unknown field: found `no_such_setting`"),
            "{service}: {stderr}"
        );
    }
}
