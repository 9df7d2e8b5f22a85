//! The default image → local command mapping of the pod runner.
//!
//! | image | local command | image it stands for |
//! |---|---|---|
//! | `ghcr.io/mcp-keycloak-operator/operator:<crate version>` | the built `mcp-keycloak-operator` binary, default args `["run"]` | `Dockerfile` (ENTRYPOINT the binary, CMD `run`); in Proxy mode the gateway container runs it with args `["proxy"]` |
//! | `ghcr.io/mcp-keycloak-operator/server-everything:2026.8.31` | `node <npm dir>/node_modules/@modelcontextprotocol/server-everything/dist/index.js`, default args `["streamableHttp"]` | `examples/images/server-everything.Dockerfile`: npm `@modelcontextprotocol/server-everything@2026.8.31`, listens on `$PORT` (all interfaces), MCP endpoint `/mcp` |
//! | `ghcr.io/mcp-keycloak-operator/native-server-example:<crate version>` | the built `examples/native_server` binary, no default args | `examples/images/native-server.Dockerfile` |
//!
//! Tags are exact (see [`ImageMap`]): another version of an image is refused, not run with the
//! one installed here. The npm package is installed once into
//! `~/.cache/mcp-keycloak-operator/npm/server-everything@2026.8.31/` by
//! [`ensure_server_everything`] (`npm install`, ~10 s, output shown).

use std::path::{Path, PathBuf};

use super::{ImageMap, LocalCommand, RunnerError};

pub const OPERATOR_IMAGE_REPOSITORY: &str = "ghcr.io/mcp-keycloak-operator/operator";
pub const SERVER_EVERYTHING_PACKAGE: &str = "@modelcontextprotocol/server-everything";
pub const SERVER_EVERYTHING_VERSION: &str = "2026.8.31";
pub const SERVER_EVERYTHING_IMAGE: &str =
    "ghcr.io/mcp-keycloak-operator/server-everything:2026.8.31";
/// Where server-everything serves MCP (Streamable HTTP).
pub const SERVER_EVERYTHING_MCP_PATH: &str = "/mcp";
pub const NATIVE_EXAMPLE_IMAGE_REPOSITORY: &str =
    "ghcr.io/mcp-keycloak-operator/native-server-example";

/// `ghcr.io/mcp-keycloak-operator/operator:<crate version>`: the operator's default image.
pub fn operator_image() -> String {
    format!("{OPERATOR_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// `ghcr.io/mcp-keycloak-operator/native-server-example:<crate version>`.
pub fn native_example_image() -> String {
    format!(
        "{NATIVE_EXAMPLE_IMAGE_REPOSITORY}:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// What the operator image runs: its binary, CMD `run`.
pub fn operator_command(binary: &Path) -> LocalCommand {
    LocalCommand {
        program: binary.to_path_buf(),
        fixed_args: vec![],
        default_args: vec!["run".into()],
    }
}

/// The local programs behind the default images.
#[derive(Debug, Clone)]
pub struct LocalBinaries {
    /// The built `mcp-keycloak-operator` binary.
    pub operator: PathBuf,
    /// The built `native_server` example (`target/<profile>/examples/native_server`), if any.
    pub native_example: Option<PathBuf>,
    /// `<npm dir>/node_modules/@modelcontextprotocol/server-everything/dist/index.js` (from
    /// [`ensure_server_everything`]), if installed.
    pub server_everything_script: Option<PathBuf>,
}

impl LocalBinaries {
    /// The binaries of one cargo profile dir (`target/debug`): `mcp-keycloak-operator` and
    /// `examples/native_server`, each only if it exists; server-everything if installed in the
    /// default npm dir.
    pub fn from_profile_dir(dir: &Path) -> LocalBinaries {
        let native = dir.join("examples/native_server");
        LocalBinaries {
            operator: dir.join("mcp-keycloak-operator"),
            native_example: native.exists().then_some(native),
            server_everything_script: Some(server_everything_script(&npm_dir()))
                .filter(|p| p.exists()),
        }
    }
}

/// The default mapping (see the module docs). Images whose local program is missing are left
/// out, so a pod using them is refused as unmapped.
pub fn default_image_map(bins: &LocalBinaries) -> ImageMap {
    let mut map = ImageMap::default().with(&operator_image(), operator_command(&bins.operator));
    if let Some(script) = &bins.server_everything_script {
        map = map.with(
            SERVER_EVERYTHING_IMAGE,
            LocalCommand {
                program: which("node").unwrap_or_else(|| "node".into()),
                fixed_args: vec![script.display().to_string()],
                default_args: vec!["streamableHttp".into()],
            },
        );
    }
    if let Some(native) = &bins.native_example {
        map = map.with(
            &native_example_image(),
            LocalCommand {
                program: native.clone(),
                fixed_args: vec![],
                default_args: vec![],
            },
        );
    }
    map
}

/// `~/.cache/mcp-keycloak-operator/npm`.
pub fn npm_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/mcp-keycloak-operator/npm")
}

fn package_dir(npm_dir: &Path) -> PathBuf {
    npm_dir.join(format!("server-everything@{SERVER_EVERYTHING_VERSION}"))
}

fn server_everything_script(npm_dir: &Path) -> PathBuf {
    package_dir(npm_dir)
        .join("node_modules")
        .join(SERVER_EVERYTHING_PACKAGE)
        .join("dist/index.js")
}

/// Installs `@modelcontextprotocol/server-everything@2026.8.31` under `npm_dir` unless it is
/// there already; returns its `dist/index.js`. Blocking (run it with `spawn_blocking` from async
/// code). npm's output goes to this process's stderr. Safe against concurrent callers: each
/// installs into its own temporary directory, which is renamed into place.
pub fn ensure_server_everything(npm_dir: &Path) -> Result<PathBuf, RunnerError> {
    let what = format!("{SERVER_EVERYTHING_PACKAGE}@{SERVER_EVERYTHING_VERSION}");
    let err = |message: String| RunnerError::Install {
        what: what.clone(),
        message,
    };
    let script = server_everything_script(npm_dir);
    if installed_version(npm_dir).as_deref() == Some(SERVER_EVERYTHING_VERSION) && script.exists() {
        return Ok(script);
    }
    let npm = which("npm").ok_or_else(|| err("npm not found on PATH (install Node.js >= 18 with npm, e.g. apt-get install nodejs npm)".into()))?;
    let final_dir = package_dir(npm_dir);
    let tmp = npm_dir.join(format!(".install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    let manifest = serde_json::json!({
        "name": "mcp-keycloak-operator-server-everything",
        "private": true,
        "dependencies": {SERVER_EVERYTHING_PACKAGE: SERVER_EVERYTHING_VERSION},
    });
    std::fs::write(tmp.join("package.json"), manifest.to_string())
        .map_err(|e| err(e.to_string()))?;
    eprintln!(
        "[podrunner] installing {what} into {} (npm install, once)",
        final_dir.display()
    );
    let status = std::process::Command::new(npm)
        .args(["install", "--no-audit", "--no-fund", "--omit=dev"])
        .current_dir(&tmp)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(|e| err(format!("running npm: {e}")))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(err(format!("npm install failed: {status}")));
    }
    if let Err(e) = std::fs::rename(&tmp, &final_dir) {
        // Another installer won the race (or an old copy is in the way).
        let _ = std::fs::remove_dir_all(&tmp);
        if installed_version(npm_dir).as_deref() != Some(SERVER_EVERYTHING_VERSION) {
            return Err(err(format!("moving into {}: {e}", final_dir.display())));
        }
    }
    if !script.exists() {
        return Err(err(format!("{} missing after install", script.display())));
    }
    Ok(script)
}

fn installed_version(npm_dir: &Path) -> Option<String> {
    let pkg = package_dir(npm_dir)
        .join("node_modules")
        .join(SERVER_EVERYTHING_PACKAGE)
        .join("package.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(pkg).ok()?).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// First `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map_resolves_the_documented_images_and_only_their_tags() {
        let bins = LocalBinaries {
            operator: "/t/mcp-keycloak-operator".into(),
            native_example: Some("/t/examples/native_server".into()),
            server_everything_script: Some("/n/dist/index.js".into()),
        };
        let map = default_image_map(&bins);
        let op = map.lookup(&operator_image()).expect("operator image");
        assert_eq!(op.program, PathBuf::from("/t/mcp-keycloak-operator"));
        assert_eq!(op.default_args, vec!["run"]);
        let ev = map
            .lookup(SERVER_EVERYTHING_IMAGE)
            .expect("server-everything");
        assert_eq!(ev.fixed_args, vec!["/n/dist/index.js"]);
        assert_eq!(ev.default_args, vec!["streamableHttp"]);
        assert!(map.lookup(&native_example_image()).is_some());
        // Another tag (or none, i.e. latest) of a pinned image is not what is installed.
        assert!(map
            .lookup("ghcr.io/mcp-keycloak-operator/server-everything:2025.1.1")
            .is_none());
        assert!(map
            .lookup("ghcr.io/mcp-keycloak-operator/server-everything")
            .is_none());
        assert!(map
            .lookup("ghcr.io/mcp-keycloak-operator/operator:9.9.9")
            .is_none());

        let without = default_image_map(&LocalBinaries {
            native_example: None,
            server_everything_script: None,
            ..bins
        });
        assert!(without.lookup(SERVER_EVERYTHING_IMAGE).is_none());
        assert!(without.lookup(&native_example_image()).is_none());
    }
}
