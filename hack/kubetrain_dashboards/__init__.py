"""The Grafana dashboards that ship with the Helm chart, as code (grafana-foundation-sdk)."""
