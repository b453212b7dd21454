#!/bin/bash
# What the release's script of this name runs.
exec /opt/kafka/bin/kafka-tool org.apache.kafka.tools.TopicCommand "$@"
