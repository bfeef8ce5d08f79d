# Sourced by the scripts: environment shared by the demo, the tests and the benchmarks.
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export GX_ANALYTICS_ENABLED=false
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
export UV_NO_SYNC=1
