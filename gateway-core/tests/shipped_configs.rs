//! Every configuration file the project ships parses and validates.

use std::path::Path;

use gateway_core::config::GatewayConfig;

fn check(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let c: GatewayConfig =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    c.validate()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn shipped_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut n = 0;
    for dir in ["examples", "gateway-bin/tests", "haproxy"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|f| f != "Cargo.toml")
            {
                check(&p);
                n += 1;
            }
        }
    }
    assert!(n >= 2, "found {n} configs");
}

#[test]
fn example_config_is_the_defaults() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("examples/gateway.toml")).unwrap();
    let c: GatewayConfig = toml::from_str(&text).unwrap();
    assert_eq!(
        toml::to_string(&c).unwrap(),
        toml::to_string(&GatewayConfig::default()).unwrap()
    );
}
