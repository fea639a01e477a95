package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLSFiles names the PEM files of one party: its certificate and key, and
// the CA it trusts.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// CA is a throwaway certificate authority for tests (ECDSA P-256, valid for
// a day).
type CA struct {
	// CertFile is the CA certificate in PEM.
	CertFile string
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
}

// certValidity is short on purpose: these are test credentials. The start
// lies an hour back so that a clock a little behind still accepts them.
const (
	certBackdate = time.Hour
	certValidity = 24 * time.Hour
)

// NewCA creates a CA and writes its certificate to dir/<name>.crt.
func NewCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("etcdtest: CA %s key: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"custos test"}},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(certValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("etcdtest: CA %s certificate: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("etcdtest: CA %s certificate: %w", name, err)
	}
	p := filepath.Join(dir, name+".crt")
	if err := writePEM(p, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	return &CA{CertFile: p, cert: cert, key: key}, nil
}

// IssueServer writes a certificate for 127.0.0.1, ::1 and localhost to
// dir/<name>.crt and .key. It is good for client authentication too,
// because etcd's gateway connects to its own server with it.
func (ca *CA) IssueServer(dir, name string) (TLSFiles, error) {
	return ca.issue(dir, name, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
}

// IssueClient writes a client certificate with common name name to
// dir/<name>.crt and .key.
func (ca *CA) IssueClient(dir, name string) (TLSFiles, error) {
	return ca.issue(dir, name, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (ca *CA) issue(dir, name string, tmpl *x509.Certificate) (TLSFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TLSFiles{}, fmt.Errorf("etcdtest: %s key: %w", name, err)
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-certBackdate)
	tmpl.NotAfter = now.Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return TLSFiles{}, fmt.Errorf("etcdtest: %s certificate: %w", name, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return TLSFiles{}, fmt.Errorf("etcdtest: %s key: %w", name, err)
	}
	f := TLSFiles{CAFile: ca.CertFile, CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
	if err := writePEM(f.CertFile, "CERTIFICATE", der); err != nil {
		return TLSFiles{}, err
	}
	if err := writePEM(f.KeyFile, "PRIVATE KEY", kder); err != nil {
		return TLSFiles{}, err
	}
	return f, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on supported platforms.
		panic(err)
	}
	return n
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("etcdtest: write %s: %w", path, err)
	}
	return nil
}
