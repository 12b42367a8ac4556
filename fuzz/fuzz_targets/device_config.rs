//! The device configuration file (`/etc/tolk/tolk.toml`): parse, then every validation rule.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tolk_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_toml_str(text) {
        if cfg.validate().is_ok() {
            let _ = cfg.trusted_keys();
        }
    }
});
