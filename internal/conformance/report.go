package conformance

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Summary is what a run of the suite counted (summary.json).
type Summary struct {
	Services   string    `json:"services"`
	Kubernetes string    `json:"kubernetes"`
	Nodes      int       `json:"nodes"`
	Started    string    `json:"started"`
	Seconds    float64   `json:"seconds"`
	Focus      []string  `json:"focus"`
	Skip       string    `json:"skip"`
	Passed     int       `json:"passed"`
	Failed     int       `json:"failed"`
	Skipped    int       `json:"skipped"`
	Failures   []Failure `json:"failures"`
	// SkippedTests are the selected tests that skipped themselves as they
	// ran (the message says why: too few nodes, a missing provider).
	SkippedTests []Failure `json:"skippedTests"`
	// PassedTests names every test that passed, to compare runs.
	PassedTests []string `json:"passedTests"`
}

// Failure is a test that did not pass, with the suite's message.
type Failure struct {
	Test    string `json:"test"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

// junit is the part of ginkgo's JUnit report a summary reads.
type junit struct {
	Suites []struct {
		Cases []struct {
			Name    string `xml:"name,attr"`
			Status  string `xml:"status,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
			Skipped *struct {
				Message string `xml:"message,attr"`
			} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// ReadJUnit counts the tests (ginkgo's [It] cases; not its suite setup,
// unless that failed) of a JUnit report into s. The tests the selection
// left out are in the report too, skipped with the message "skipped"
// alone: they do not count.
func ReadJUnit(file string, s *Summary) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("the suite's report: %w", err)
	}
	var r junit
	if err := xml.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("the suite's report %s: %w", file, err)
	}
	for _, suite := range r.Suites {
		for _, c := range suite.Cases {
			status := c.Status
			switch {
			case status != "":
			case c.Failure != nil || c.Error != nil:
				status = "failed"
			case c.Skipped != nil:
				status = "skipped"
			default:
				status = "passed"
			}
			test := strings.TrimPrefix(c.Name, "[It] ")
			isSpec := strings.HasPrefix(c.Name, "[It] ")
			switch {
			case status == "passed" && isSpec:
				s.Passed++
				s.PassedTests = append(s.PassedTests, test)
			case status == "passed", status == "skipped" && !isSpec:
			case status == "skipped" && c.Skipped != nil && c.Skipped.Message == "skipped":
			case status == "skipped", status == "pending":
				s.Skipped++
				why := status
				if c.Skipped != nil {
					why = strings.TrimPrefix(c.Skipped.Message, "skipped - ")
				}
				s.SkippedTests = append(s.SkippedTests, Failure{Test: test, Status: status, Message: why})
			default: // failed, panicked, timedout, interrupted, aborted
				if isSpec {
					s.Failed++
				}
				msg := ""
				if c.Failure != nil {
					msg = c.Failure.Message
					if msg == "" {
						msg = c.Failure.Text
					}
				} else if c.Error != nil {
					msg = c.Error.Message
				}
				s.Failures = append(s.Failures, Failure{Test: test, Status: status, Message: strings.TrimSpace(msg)})
			}
		}
	}
	slices.Sort(s.PassedTests)
	return nil
}

// Write writes s as summary.json.
func (s *Summary) Write(file string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(file, append(b, '\n'), 0o644)
}

// Print writes the counts and each failure, its message cut short.
func (s *Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "services %s on %d real nodes (Kubernetes %s), %.0f s: %d passed, %d failed, %d skipped\n",
		s.Services, s.Nodes, s.Kubernetes, s.Seconds, s.Passed, s.Failed, s.Skipped)
	for _, f := range s.Failures {
		msg := f.Message
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		fmt.Fprintf(w, "  %s: %s\n    %s\n", strings.ToUpper(f.Status), f.Test, msg)
	}
}

// ReadSummary reads a summary.json a run wrote.
func ReadSummary(file string) (*Summary, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var s Summary
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &s, nil
}

// Regressions are the tests that passed in ref and did not pass in s:
// each is a defect of s's dataplane where ref is the reference.
func (s *Summary) Regressions(ref *Summary) []string {
	var out []string
	for _, t := range ref.PassedTests {
		if _, ok := slices.BinarySearch(s.PassedTests, t); !ok {
			out = append(out, t)
		}
	}
	return out
}
