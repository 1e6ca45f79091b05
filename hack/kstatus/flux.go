package main

// Flux's healthCheckExprs, evaluated the way kustomize-controller documents it (RFC 0009,
// fluxcd.io "health check exprs"): a status.observedGeneration behind metadata.generation is
// InProgress; otherwise the expressions inProgress, failed and current, in that order,
// are evaluated against the object's fields and the first true one decides; none true
// is InProgress. The expressions are parsed, not type-checked, in an environment with
// CEL's optional types and the strings, sets and encoders extensions, as Flux's is; an
// expression that cannot be evaluated (a field the object lacks) is an error.

import (
	"context"
	"fmt"
	"os"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// healthCheckExpr is one entry of a Kustomization's spec.healthCheckExprs.
type healthCheckExpr struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	InProgress string `json:"inProgress"`
	Failed     string `json:"failed"`
	Current    string `json:"current"`
}

type fluxChecks struct {
	exprs []healthCheckExpr
	env   *cel.Env
}

// loadFluxChecks reads spec.healthCheckExprs from a Flux Kustomization in YAML.
func loadFluxChecks(path string) (*fluxChecks, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kustomization struct {
		Spec struct {
			HealthCheckExprs []healthCheckExpr `json:"healthCheckExprs"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &kustomization); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		return nil, err
	}
	return &fluxChecks{exprs: kustomization.Spec.HealthCheckExprs, env: env}, nil
}

// verdict is Flux's status for obj, "" when no expression entry matches its kind.
func (f *fluxChecks) verdict(obj *unstructured.Unstructured) (string, error) {
	for _, check := range f.exprs {
		if check.APIVersion != obj.GetAPIVersion() || check.Kind != obj.GetKind() {
			continue
		}
		content := obj.UnstructuredContent()
		observed, found, err := unstructured.NestedInt64(content, "status", "observedGeneration")
		if err != nil {
			return "", err
		}
		if found && observed != obj.GetGeneration() {
			return "InProgress", nil
		}
		for _, step := range []struct{ expr, status string }{
			{check.InProgress, "InProgress"}, {check.Failed, "Failed"}, {check.Current, "Current"},
		} {
			if step.expr == "" {
				continue
			}
			holds, err := f.evaluate(step.expr, content)
			if err != nil {
				return "", err
			}
			if holds {
				return step.status, nil
			}
		}
		return "InProgress", nil
	}
	return "", nil
}

func (f *fluxChecks) evaluate(expr string, content map[string]interface{}) (bool, error) {
	parsed, issues := f.env.Parse(expr)
	if issues != nil && issues.Err() != nil {
		return false, fmt.Errorf("parse %q: %w", expr, issues.Err())
	}
	program, err := f.env.Program(parsed)
	if err != nil {
		return false, err
	}
	value, _, err := program.ContextEval(context.Background(), content)
	if err != nil {
		return false, fmt.Errorf("evaluate %q: %w", expr, err)
	}
	result, ok := value.(types.Bool)
	if !ok {
		return false, fmt.Errorf("%q is not a boolean", expr)
	}
	return bool(result), nil
}
