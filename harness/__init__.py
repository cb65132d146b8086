"""What the tests and the benchmarks share: the real servers they start on 127.0.0.1
(`servers`) and the monitoring files they read (`monitoring`)."""
