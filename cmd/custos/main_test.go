package main

import (
	"os"
	"testing"
)

// TestMain lets the test binary stand in for the custos binary: tests that
// need a real custos process (the agent's worker processes) start it with
// CUSTOS_TEST_AS_CUSTOS=1, and it then runs main with its arguments.
func TestMain(m *testing.M) {
	if os.Getenv("CUSTOS_TEST_AS_CUSTOS") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}
