// Command kstatus prints the status that sigs.k8s.io/cli-utils' kstatus library (the one
// Flux, cli-utils and kpt use to decide whether an applied object is healthy) computes for
// each object it is given: read from YAML or JSON files (or stdin, "-"), or fetched live
// from an API server with a kubeconfig.
//
//	kstatus FILE...                       objects from files, "-" for stdin
//	kstatus -kubeconfig K -n NS [NAME...] ModelDeployments fetched live (all in NS without NAME)
//	kstatus -flux KUSTOMIZATION.yaml ...  also what Flux says with that Kustomization's
//	                                      spec.healthCheckExprs (flux.go)
//
// One JSON line per object: {"namespace", "name", "kind", "status", "message"}, and with
// -flux "flux" (the status those expressions give, "" when none is for the object's kind)
// or "fluxError" (an expression that could not be evaluated).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Status    string `json:"status"`
	Message   string `json:"message"`
	Flux      string `json:"flux,omitempty"`
	FluxError string `json:"fluxError,omitempty"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "fetch live objects with this kubeconfig instead of reading files")
	namespace := flag.String("n", "default", "namespace of the live objects")
	group := flag.String("group", "openmodel.dev", "API group of the live objects")
	version := flag.String("version", "v1alpha1", "API version of the live objects")
	resource := flag.String("resource", "modeldeployments", "resource (plural) of the live objects")
	fluxKustomization := flag.String("flux", "", "a Flux Kustomization whose spec.healthCheckExprs to evaluate too")
	flag.Parse()

	var flux *fluxChecks
	if *fluxKustomization != "" {
		var err error
		if flux, err = loadFluxChecks(*fluxKustomization); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
	}

	var objects []*unstructured.Unstructured
	var err error
	if *kubeconfig != "" {
		gvr := schema.GroupVersionResource{Group: *group, Version: *version, Resource: *resource}
		objects, err = fetch(*kubeconfig, gvr, *namespace, flag.Args())
	} else {
		objects, err = readFiles(flag.Args())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, obj := range objects {
		result, err := status.Compute(obj)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %s/%s: %v\n", obj.GetNamespace(), obj.GetName(), err)
			os.Exit(1)
		}
		line := verdict{
			Namespace: obj.GetNamespace(), Name: obj.GetName(), Kind: obj.GetKind(),
			Status: result.Status.String(), Message: result.Message,
		}
		if flux != nil {
			if line.Flux, err = flux.verdict(obj); err != nil {
				line.FluxError = err.Error()
			}
		}
		if err := out.Encode(line); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
	}
}

func fetch(kubeconfig string, gvr schema.GroupVersionResource, namespace string, names []string) ([]*unstructured.Unstructured, error) {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := dynamic.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	objects := client.Resource(gvr).Namespace(namespace)
	ctx := context.Background()
	if len(names) == 0 {
		list, err := objects.List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		found := make([]*unstructured.Unstructured, 0, len(list.Items))
		for i := range list.Items {
			found = append(found, &list.Items[i])
		}
		return found, nil
	}
	found := make([]*unstructured.Unstructured, 0, len(names))
	for _, name := range names {
		obj, err := objects.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		found = append(found, obj)
	}
	return found, nil
}

func readFiles(paths []string) ([]*unstructured.Unstructured, error) {
	if len(paths) == 0 {
		paths = []string{"-"}
	}
	var objects []*unstructured.Unstructured
	for _, path := range paths {
		var reader io.Reader = os.Stdin
		if path != "-" {
			file, err := os.Open(path)
			if err != nil {
				return nil, err
			}
			defer file.Close()
			reader = file
		}
		decoder := utilyaml.NewYAMLOrJSONDecoder(reader, 4096)
		for {
			var document json.RawMessage
			if err := decoder.Decode(&document); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			if len(document) == 0 || string(document) == "null" {
				continue // an empty YAML document
			}
			// Through the API machinery's own JSON decoding, so numbers are int64 as
			// they are in an object fetched from an API server.
			obj := &unstructured.Unstructured{}
			if err := obj.UnmarshalJSON(document); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			objects = append(objects, obj)
		}
	}
	return objects, nil
}
