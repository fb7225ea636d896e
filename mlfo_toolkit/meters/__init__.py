"""Meters: throttle a cohort with OpenFlow 1.3 meters, through ONOS or straight to Open vSwitch."""
