"""Windows into a running cluster: the web dashboard (`server`), the observability commands of `p2p`
(`commands`), the Chrome trace (`timeline`), Prometheus text (`metrics_text`) and log files (`logs`)."""
