//! Python drivers for tests: whether `python3` can import a module; a missing one skips the
//! test locally and fails it in CI (the `CI` environment variable).

/// How to install the Python drivers the tests use.
pub const PIP_INSTALL: &str = "python3 -m pip install asyncpg \"psycopg[binary]\"";

/// True when running in CI, where every driver must be installed.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// `Err(reason)` if `python3` or the module cannot be used.
pub fn python_module(module: &str) -> Result<String, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import sys, {module}; print(sys.version.split()[0], {module}.__version__)"),
        ])
        .output()
        .map_err(|e| format!("python3 could not be run ({e})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "python3 has no usable module `{module}`: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ))
    }
}

/// True if the test should go on; false (after printing SKIPPED) if it should return.
/// Panics in CI when the driver is missing.
pub fn require_python_module(module: &str) -> bool {
    match python_module(module) {
        Ok(version) => {
            eprintln!("using python3 / {module}: {version}");
            true
        }
        Err(reason) if in_ci() => {
            panic!("{reason}. The driver tests need it in CI: install with `{PIP_INSTALL}`")
        }
        Err(reason) => {
            eprintln!("SKIPPED: {reason}; install with `{PIP_INSTALL}` to run this test");
            false
        }
    }
}
