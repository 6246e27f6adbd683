//! The benchmark binary still runs end to end: every server echoes under
//! every workload and a table comes out. Performance is not asserted.

use std::process::Command;

#[test]
fn quick_run_prints_a_full_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_echo_bench"))
        .args(["--quick", "--seconds", "0.1", "--idle", "200"])
        .output()
        .expect("run echo_bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "echo_bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in [
        "50 conns ping-pong 64 B",
        "1 conn ping-pong 64 B",
        "50 conns x 16 pipelined",
        "connect+echo+close",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no row for {label}:\n{stdout}"));
        let cells: Vec<f64> = row
            .split('|')
            .skip(2)
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.trim().parse().expect("a number"))
            .collect();
        assert_eq!(cells.len(), 8, "{row}");
        // Each server completed round trips and used CPU for them.
        assert!(cells[..6].iter().all(|v| *v > 0.0), "{row}");
    }
    let idle = stdout
        .lines()
        .find(|l| l.starts_with("| KiB, 200 idle conns |"))
        .unwrap_or_else(|| panic!("no idle row:\n{stdout}"));
    assert_eq!(idle.split('|').filter(|c| !c.trim().is_empty()).count(), 4);
}
