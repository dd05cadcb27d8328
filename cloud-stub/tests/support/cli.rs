//! The operator CLI (`octomil`) run in-process against the test cloud.

use clap::Parser;
use octomil_cloud::cli::CliError;

impl super::Env {
    /// Runs `octomil ARGS` with `key` against this cloud: the result, stdout and stderr.
    /// `--json` in `args` asks for JSON output.
    pub async fn octomil(
        &self,
        key: &str,
        args: &[&str],
    ) -> (Result<(), CliError>, String, String) {
        let ca = self.dir.path().join("ca-for-cli.pem");
        std::fs::write(&ca, self.handle.ca_pem.as_bytes()).unwrap();
        let mut argv = vec![
            "octomil",
            "--api-url",
            &self.handle.http_url,
            "--api-key",
            key,
            "--ca-file",
            ca.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        let cli = octomil_cloud::cli::Cli::try_parse_from(argv).unwrap();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let json = args.contains(&"--json");
        let mut out = octomil_cloud::cli::Out::new(&mut stdout, &mut stderr, json, 0);
        let r = octomil_cloud::cli::run(cli, &mut out).await;
        (
            r,
            String::from_utf8(stdout).unwrap(),
            String::from_utf8(stderr).unwrap(),
        )
    }
}
