package main

import (
	"os"
	"strings"
	"testing"
)

func TestParseRTTFlags(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parse := func(rounds int, aa bool, stacks string) error {
		c := config{tunsocks: exe, iperfTime: 5e9, rateTime: 3e9, rateReps: 3, rtts: 2000, idle: 1000, udpRate: 5000,
			rttRounds: rounds, rttProcs: 3, rttAA: aa}
		return c.parse("1500", "8", stacks, "none", "1")
	}
	for _, ok := range []struct {
		rounds int
		aa     bool
		stacks string
	}{{5, false, "gvisor,system"}, {0, true, "gvisor"}, {50, true, "system,gvisor"}, {1, false, "system"}} {
		if err := parse(ok.rounds, ok.aa, ok.stacks); err != nil {
			t.Errorf("-rtt-rounds %d -rtt-aa=%v -tcp-stacks %s: %v", ok.rounds, ok.aa, ok.stacks, err)
		}
	}
	for _, bad := range []struct {
		rounds int
		aa     bool
		stacks string
		want   string
	}{{-1, false, "gvisor", "-rtt-rounds"}, {51, false, "gvisor", "-rtt-rounds"}, {5, true, "system", "-rtt-aa"}} {
		if err := parse(bad.rounds, bad.aa, bad.stacks); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("-rtt-rounds %d -rtt-aa=%v -tcp-stacks %s: %v, want an error naming %s", bad.rounds, bad.aa, bad.stacks, err, bad.want)
		}
	}
}

func TestParseIperfFlags(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parse := func(rounds int, aa, skip bool, stacks string) error {
		c := config{tunsocks: exe, iperfTime: 5e9, rateTime: 3e9, rateReps: 3, rtts: 2000, rttRounds: 40, rttProcs: 1,
			idle: 1000, udpRate: 5000, iperfRounds: rounds, iperfAA: aa, skipIperf: skip}
		return c.parse("1500", "8", stacks, "none", "1")
	}
	for _, ok := range []struct {
		rounds   int
		aa, skip bool
		stacks   string
	}{{5, true, false, "gvisor"}, {0, true, false, "system,gvisor"}, {15, false, false, "system"}, {1, false, true, "gvisor"}} {
		if err := parse(ok.rounds, ok.aa, ok.skip, ok.stacks); err != nil {
			t.Errorf("-iperf-rounds %d -iperf-aa=%v -skip-iperf=%v -tcp-stacks %s: %v", ok.rounds, ok.aa, ok.skip, ok.stacks, err)
		}
	}
	for _, bad := range []struct {
		rounds   int
		aa, skip bool
		stacks   string
		want     string
	}{{-1, false, false, "gvisor", "-iperf-rounds"}, {16, false, false, "gvisor", "-iperf-rounds"},
		{5, true, false, "system", "-iperf-aa"}, {5, true, true, "gvisor", "-skip-iperf"}} {
		if err := parse(bad.rounds, bad.aa, bad.skip, bad.stacks); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("-iperf-rounds %d -iperf-aa=%v -skip-iperf=%v -tcp-stacks %s: %v, want an error naming %s",
				bad.rounds, bad.aa, bad.skip, bad.stacks, err, bad.want)
		}
	}
	// -aa-tunsocks puts another binary in the A/A column: without an
	// A/A column it would be ignored, so it is refused.
	parseAB := func(rttAA bool) error {
		c := config{tunsocks: exe, aaTunsocks: exe, rttAA: rttAA, iperfTime: 5e9, rateTime: 3e9, rateReps: 3, rtts: 2000, rttRounds: 40, rttProcs: 1,
			idle: 1000, udpRate: 5000, iperfRounds: 5}
		return c.parse("1500", "8", "gvisor", "none", "1")
	}
	if err := parseAB(false); err == nil || !strings.Contains(err.Error(), "-aa-tunsocks") {
		t.Errorf("-aa-tunsocks without -rtt-aa or -iperf-aa: %v, want an error naming -aa-tunsocks", err)
	}
	if err := parseAB(true); err != nil {
		t.Errorf("-aa-tunsocks with -rtt-aa: %v", err)
	}
}
