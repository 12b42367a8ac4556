//! The kiosk's firmware configuration (device identity, audio, VAD, model slots, MQTT, OTA
//! policy), read from TOML and validated. The types arrive with the device-operations work.
