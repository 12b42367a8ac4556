//! Headless Chromium for the tests of the kiosk's pages, over the DevTools protocol
//! (`headless_chrome`). Debian's `chromium` package (installed by `deploy/host/setup.sh`) is
//! required: without it the tests fail naming it.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::types::Bounds;
use headless_chrome::{Browser, LaunchOptions, Tab};

/// The Chromium binary, or a panic naming the package that provides it.
pub fn chromium_path() -> PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/lib/chromium/chromium",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| {
        panic!(
            "headless Chromium not found: install Debian's `chromium` package \
                 (deploy/host/setup.sh installs it)"
        )
    })
}

/// A headless browser whose window (and so viewport) is `width` x `height`.
pub fn launch(width: u32, height: u32) -> Browser {
    let args: Vec<&OsStr> = [
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--no-first-run",
        "--hide-scrollbars",
        "--enable-precise-memory-info",
        "--js-flags=--expose-gc",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let opts = LaunchOptions::default_builder()
        .path(Some(chromium_path()))
        .headless(true)
        .sandbox(false)
        .window_size(Some((width, height)))
        .args(args)
        .idle_browser_timeout(Duration::from_secs(600))
        .build()
        .expect("launch options");
    Browser::new(opts).unwrap_or_else(|e| panic!("starting headless Chromium: {e}"))
}

/// A tab on `url`, loaded.
pub fn open(browser: &Browser, url: &str) -> Arc<Tab> {
    let tab = browser.new_tab().expect("a new tab");
    tab.set_default_timeout(Duration::from_secs(30));
    tab.navigate_to(url)
        .and_then(|t| t.wait_until_navigated())
        .unwrap_or_else(|e| panic!("loading {url}: {e}"));
    tab
}

/// Resizes the tab's window until its viewport is `width` x `height` CSS pixels (the window
/// size Chromium is launched with includes space for its invisible toolbars).
pub fn fit_viewport(tab: &Tab, width: u32, height: u32) {
    for _ in 0..4 {
        let v = eval(tab, "[window.innerWidth, window.innerHeight]");
        let (iw, ih) = (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
        if iw as u32 == width && ih as u32 == height {
            return;
        }
        let b = tab.get_bounds().expect("window bounds");
        tab.set_bounds(Bounds::Normal {
            left: Some(0),
            top: Some(0),
            width: Some(b.width + width as f64 - iw),
            height: Some(b.height + height as f64 - ih),
        })
        .expect("resizing the window");
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = eval(tab, "[window.innerWidth, window.innerHeight]");
    panic!("viewport is {v}, wanted {width}x{height}");
}

/// The JSON value of `expr` (evaluated as `JSON.stringify(expr)` in the page).
pub fn eval(tab: &Tab, expr: &str) -> serde_json::Value {
    let js = format!("JSON.stringify((() => {{ return ({expr}); }})())");
    let r = tab
        .evaluate(&js, false)
        .unwrap_or_else(|e| panic!("evaluating {expr}: {e}"));
    match r.value {
        Some(serde_json::Value::String(s)) => {
            serde_json::from_str(&s).unwrap_or(serde_json::Value::Null)
        }
        _ => serde_json::Value::Null,
    }
}

/// Waits until `expr` is truthy in the page; panics with `what` and the last value after
/// `timeout`.
pub fn wait_for(tab: &Tab, expr: &str, timeout: Duration, what: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = eval(tab, expr);
        let truthy = match &v {
            serde_json::Value::Null | serde_json::Value::Bool(false) => false,
            serde_json::Value::String(s) => !s.is_empty(),
            serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: still {v} after {timeout:?} ({expr})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The text of the first element matching `selector` ("" when there is none).
pub fn text(tab: &Tab, selector: &str) -> String {
    let sel = serde_json::to_string(selector).unwrap();
    eval(
        tab,
        &format!("(document.querySelector({sel}) || {{textContent: ''}}).textContent"),
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Clicks the element matching `selector` as a user would (scrolled into view, mouse events).
pub fn click(tab: &Tab, selector: &str) {
    tab.wait_for_element(selector)
        .and_then(|e| e.click().map(|_| ()))
        .unwrap_or_else(|e| panic!("clicking {selector}: {e}"));
}

/// A PNG of the viewport at `path` (folders made as needed).
pub fn screenshot(tab: &Tab, path: &Path) {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &png).unwrap();
    assert!(
        png.len() > 1000,
        "{} is a {} byte PNG",
        path.display(),
        png.len()
    );
}

/// Where the screenshots go: `target/display/` of the workspace.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/display")
}
