// Command kstatus prints the kstatus result (sigs.k8s.io/cli-utils/pkg/kstatus/status, the
// library Flux and kpt use to decide whether a resource is ready) for one Kubernetes object
// read as JSON from stdin, as one JSON line: {"status":"Current","message":"..."}.
//
// The tests read objects from the API server themselves and pipe them in, so this helper needs
// no kubeconfig and no client-go.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type output struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	// UnmarshalJSON keeps integers as int64, which kstatus's field accessors require.
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		return fmt.Errorf("stdin is not one Kubernetes object in JSON: %w", err)
	}
	res, err := status.Compute(u)
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(output{Status: res.Status.String(), Message: res.Message})
}
