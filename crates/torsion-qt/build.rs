//! Builds the small C++ side of the Qt bridge against Debian's qt6-base-dev.
fn main() {
    let qt = pkg_config::Config::new()
        .atleast_version("6.0")
        .probe("Qt6Gui")
        .unwrap_or_else(|e| {
            panic!("torsion-qt needs Qt 6 Core development files (Debian: qt6-base-dev): {e}")
        });
    let mut build = cxx_build::bridge("src/lib.rs");
    build
        .file("src/bridge.cpp")
        .std("c++17")
        .flag_if_supported("-fPIC");
    for p in &qt.include_paths {
        build.include(p);
    }
    build.compile("torsion-qt-bridge");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=src/bridge.cpp");
    println!("cargo:rerun-if-changed=include/bridge.h");
}
