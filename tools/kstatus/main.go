// Command kstatus prints what sigs.k8s.io/cli-utils' kstatus computes for Kubernetes objects:
// the status Flux (and kpt, and other tools built on kstatus) waits for.
//
// It reads JSON on stdin: one object, or a List (kubectl get -o json) whose items are objects.
// It writes one JSON object per input object on stdout:
//
//	{"kind": "...", "namespace": "...", "name": "...", "status": "InProgress|Current|Failed|Terminating", "message": "..."}
//
// Nothing is fetched: the caller passes the objects as the API server returned them.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var obj map[string]interface{}
	// Integers stay int64, as kstatus reads metadata.generation with NestedInt64.
	if err := utiljson.Unmarshal(data, &obj); err != nil {
		return fmt.Errorf("stdin is not a JSON object: %w", err)
	}
	u := &unstructured.Unstructured{Object: obj}
	objects := []unstructured.Unstructured{*u}
	if u.IsList() {
		list, err := u.ToList()
		if err != nil {
			return err
		}
		objects = list.Items
	}
	enc := json.NewEncoder(out)
	for i := range objects {
		o := &objects[i]
		res, err := status.Compute(o)
		if err != nil {
			return fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
		}
		if err := enc.Encode(result{o.GetKind(), o.GetNamespace(), o.GetName(),
			string(res.Status), res.Message}); err != nil {
			return err
		}
	}
	return nil
}
