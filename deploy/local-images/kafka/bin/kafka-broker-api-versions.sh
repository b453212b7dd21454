#!/bin/bash
# What the release's script of this name runs: the broker's API versions (health checks).
exec /opt/kafka/bin/kafka-tool org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
