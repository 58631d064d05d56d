//! A real browser as a test driver: Debian's headless Chromium loads a page,
//! runs its scripts for a few seconds of virtual time and prints the DOM it
//! ended with (`--dump-dom`), or a screenshot; [`fields`] reads the numbers
//! a page rendered out of that DOM.
//!
//! The command line rather than a DevTools-protocol crate: one child process
//! per page, nothing to keep alive, nothing else to install or pin, and the
//! DOM dump is exactly what the page rendered. Chromium is given no route
//! off this machine (`--host-resolver-rules`), so a page that works here
//! works with no internet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set to skip the browser tests on purpose (they fail, not skip, when
/// Chromium is missing).
pub const SKIP_ENV: &str = "BARISTA_SKIP_BROWSER";

/// The Chromium binary: `$BARISTA_CHROMIUM`, else `chromium` on `PATH`.
/// `None` only when [`SKIP_ENV`] is set; a missing browser otherwise fails
/// the test with what to install.
pub fn chromium() -> Option<PathBuf> {
    if std::env::var_os(SKIP_ENV).is_some() {
        eprintln!("{SKIP_ENV} is set: skipping the browser test on purpose");
        return None;
    }
    let found = std::env::var_os("BARISTA_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("chromium"))
                .find(|p| p.is_file())
        });
    match found {
        Some(p) if p.is_file() => Some(p),
        _ => panic!(
            "headless Chromium is needed for this test and was not found \
             (looked at $BARISTA_CHROMIUM and for `chromium` on PATH). Install \
             Debian's package: `apt-get install -y chromium` (.ci/run does), or \
             set {SKIP_ENV}=1 to skip the browser tests deliberately"
        ),
    }
}

/// What one headless run should produce.
pub enum Capture<'a> {
    /// The DOM after the page's scripts ran, on stdout.
    Dom,
    /// A PNG of a 1280×900 window.
    Screenshot(&'a Path),
}

/// Loads `url` in headless Chromium, lets its scripts run for
/// `virtual_ms` of virtual time (timers fire without waiting; network
/// requests are real and pause the virtual clock until they answer), and
/// returns stdout (the DOM for [`Capture::Dom`]). Panics with Chromium's
/// stderr if it fails or takes longer than a minute.
pub fn run(chromium: &Path, url: &str, virtual_ms: u64, capture: Capture<'_>) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox", // CI runs as root, where the sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        // Nothing resolves but loopback: the page must not need the internet.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={virtual_ms}"));
    match capture {
        Capture::Dom => {
            cmd.arg("--dump-dom");
        }
        Capture::Screenshot(png) => {
            cmd.arg(format!("--screenshot={}", png.display()))
                .arg("--window-size=1280,900");
        }
    }
    let stdout = tempfile::NamedTempFile::new().expect("stdout file");
    let stderr = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(stdout.reopen().expect("stdout file"))
        .stderr(stderr.reopen().expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for chromium") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish loading {url} within a minute\n{}",
                std::fs::read_to_string(stderr.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(stdout.path()).unwrap_or_default();
    assert!(
        status.success(),
        "chromium exited with {status} loading {url}\n{}",
        std::fs::read_to_string(stderr.path()).unwrap_or_default()
    );
    out
}

/// One element of a page that carries `data-field`: what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its `data-value`: the raw JSON value it was rendered from.
    pub value: Option<String>,
    /// Its text, entities decoded.
    pub text: String,
}

/// Every element with a `data-field` attribute in a serialised DOM, keyed by
/// (`data-row`, or "" outside tables; `data-field`). Reads Chromium's own
/// serialisation (attribute values always double-quoted), and only the
/// text up to an element's first child: the fields are leaves.
pub fn fields(dom: &str) -> BTreeMap<(String, String), Field> {
    let mut out = BTreeMap::new();
    let b = dom.as_bytes();
    let mut i = 0;
    while let Some(lt) = dom[i..].find('<').map(|k| i + k) {
        i = lt + 1;
        if !b.get(i).is_some_and(u8::is_ascii_alphabetic) {
            continue; // a closing tag, a comment, a doctype
        }
        let name_end = dom[i..]
            .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
            .map_or(dom.len(), |k| i + k);
        let name = dom[i..name_end].to_ascii_lowercase();
        let mut attrs = BTreeMap::new();
        let mut j = name_end;
        loop {
            while b
                .get(j)
                .is_some_and(|c| c.is_ascii_whitespace() || *c == b'/')
            {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' {
                break;
            }
            let an_end = dom[j..]
                .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '>')
                .map_or(dom.len(), |k| j + k);
            let an = dom[j..an_end].to_owned();
            j = an_end;
            if b.get(j) == Some(&b'=') && b.get(j + 1) == Some(&b'"') {
                let v_end = dom[j + 2..].find('"').map_or(dom.len(), |k| j + 2 + k);
                attrs.insert(an, unescape(&dom[j + 2..v_end]));
                j = v_end + 1;
            } else {
                attrs.insert(an, String::new());
            }
        }
        i = (j + 1).min(dom.len());
        if name == "script" || name == "style" {
            // Their text is code, not markup.
            i = dom[i..]
                .find(&format!("</{name}"))
                .map_or(dom.len(), |k| i + k);
            continue;
        }
        if let Some(field) = attrs.get("data-field") {
            let text_end = dom[i..].find('<').map_or(dom.len(), |k| i + k);
            out.insert(
                (
                    attrs.get("data-row").cloned().unwrap_or_default(),
                    field.clone(),
                ),
                Field {
                    value: attrs.get("data-value").cloned(),
                    text: unescape(&dom[i..text_end]),
                },
            );
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_reads_values_text_and_rows() {
        let dom = r#"<html><head><style>a<b{}</style></head><body>
            <span class="big" id="seconds_lag" data-field="seconds_lag" data-value="null">unknown</span>
            <script>if (a <b) x = '<i data-field="no">';</script>
            <td data-row="t/0" data-field="blocked" data-value="&quot;poison at &amp;1&quot;">poison at &amp;1</td>
            <div data-field="x"><span>child</span></div></body></html>"#;
        let f = fields(dom);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(
            f[&("".into(), "seconds_lag".into())],
            Field {
                value: Some("null".into()),
                text: "unknown".into()
            }
        );
        let b = &f[&("t/0".into(), "blocked".into())];
        assert_eq!(b.value.as_deref(), Some("\"poison at &1\""));
        assert_eq!(b.text, "poison at &1");
        assert_eq!(f[&("".into(), "x".into())].text, "");
    }
}
